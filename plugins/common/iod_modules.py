"""The Patient and Study modules of each IOD: which top-level attributes a derived
object copies from its source (the PS3.3 IOD module tables as highdicom 0.28.2 tabulates
them).

Written from highdicom's tables, which are private to it;
tests/plugins/common/test_iod_modules.py checks that they still equal the installed
highdicom's.
"""

from __future__ import annotations

__all__ = ["MODULE_KEYWORDS", "patient_and_study_keywords"]

# Module key -> keywords of its top-level attributes.
MODULE_KEYWORDS: dict[str, frozenset[str]] = {
    "patient": frozenset({
        "BreedRegistrationSequence", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
        "EthnicGroupCodeSequence", "GeneticModificationsSequence",
        "GroupOfPatientsIdentificationSequence", "IssuerOfPatientID",
        "IssuerOfPatientIDQualifiersSequence", "OtherPatientIDsSequence", "OtherPatientNames",
        "PatientAlternativeCalendar", "PatientBirthDate", "PatientBirthDateInAlternativeCalendar",
        "PatientBirthTime", "PatientBreedCodeSequence", "PatientBreedDescription", "PatientComments",
        "PatientDeathDateInAlternativeCalendar", "PatientID", "PatientIdentityRemoved", "PatientName",
        "PatientSex", "PatientSpeciesCodeSequence", "PatientSpeciesDescription",
        "QualityControlSubject", "ReferencedPatientPhotoSequence", "ReferencedPatientSequence",
        "ResponsibleOrganization", "ResponsiblePerson", "ResponsiblePersonRole",
        "SourcePatientGroupIdentificationSequence", "StrainAdditionalInformation", "StrainCodeSequence",
        "StrainDescription", "StrainNomenclature", "StrainStockSequence", "TypeOfPatientID",
    }),
    "clinical-trial-subject": frozenset({
        "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
        "ClinicalTrialProtocolEthicsCommitteeName", "ClinicalTrialProtocolID",
        "ClinicalTrialProtocolName", "ClinicalTrialSiteID", "ClinicalTrialSiteName",
        "ClinicalTrialSponsorName", "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
        "IssuerOfClinicalTrialProtocolID", "IssuerOfClinicalTrialSiteID",
        "IssuerOfClinicalTrialSubjectID", "IssuerOfClinicalTrialSubjectReadingID",
        "OtherClinicalTrialProtocolIDsSequence",
    }),
    "general-study": frozenset({
        "AccessionNumber", "ConsultingPhysicianIdentificationSequence", "ConsultingPhysicianName",
        "IssuerOfAccessionNumberSequence", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
        "PhysiciansOfRecordIdentificationSequence", "PhysiciansReadingStudyIdentificationSequence",
        "ProcedureCodeSequence", "ReasonForPerformedProcedureCodeSequence", "ReferencedStudySequence",
        "ReferringPhysicianIdentificationSequence", "ReferringPhysicianName", "RequestingService",
        "RequestingServiceCodeSequence", "StudyDate", "StudyDescription", "StudyID", "StudyInstanceUID",
        "StudyTime",
    }),
    "patient-study": frozenset({
        "AdditionalPatientHistory", "AdmissionID", "AdmittingDiagnosesCodeSequence",
        "AdmittingDiagnosesDescription", "Allergies", "IssuerOfAdmissionIDSequence",
        "IssuerOfServiceEpisodeIDSequence", "LastMenstrualDate", "MeasuredAPDimension",
        "MeasuredLateralDimension", "MedicalAlerts", "Occupation", "PatientAge", "PatientBodyMassIndex",
        "PatientSexNeutered", "PatientSize", "PatientSizeCodeSequence", "PatientState", "PatientWeight",
        "PregnancyStatus", "ReasonForVisit", "ReasonForVisitCodeSequence", "ServiceEpisodeDescription",
        "ServiceEpisodeID", "SmokingStatus",
    }),
    "clinical-trial-study": frozenset({
        "ClinicalTrialTimePointDescription", "ClinicalTrialTimePointID",
        "ClinicalTrialTimePointTypeCodeSequence", "ConsentForClinicalTrialUseSequence",
        "IssuerOfClinicalTrialTimePointID", "LongitudinalTemporalEventType",
        "LongitudinalTemporalOffsetFromEvent",
    }),
}

_WITH_PATIENT_STUDY = frozenset({
    "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.1.2.1", "1.2.840.10008.5.1.4.1.1.1.3",
    "1.2.840.10008.5.1.4.1.1.1.3.1", "1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.104.2",
    "1.2.840.10008.5.1.4.1.1.104.3", "1.2.840.10008.5.1.4.1.1.104.4", "1.2.840.10008.5.1.4.1.1.104.5",
    "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.11.10", "1.2.840.10008.5.1.4.1.1.11.11",
    "1.2.840.10008.5.1.4.1.1.11.12", "1.2.840.10008.5.1.4.1.1.11.2", "1.2.840.10008.5.1.4.1.1.11.3",
    "1.2.840.10008.5.1.4.1.1.11.4", "1.2.840.10008.5.1.4.1.1.11.5", "1.2.840.10008.5.1.4.1.1.11.6",
    "1.2.840.10008.5.1.4.1.1.11.7", "1.2.840.10008.5.1.4.1.1.11.8", "1.2.840.10008.5.1.4.1.1.11.9",
    "1.2.840.10008.5.1.4.1.1.12.1", "1.2.840.10008.5.1.4.1.1.12.1.1", "1.2.840.10008.5.1.4.1.1.12.2",
    "1.2.840.10008.5.1.4.1.1.12.2.1", "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.128.1",
    "1.2.840.10008.5.1.4.1.1.13.1.1", "1.2.840.10008.5.1.4.1.1.13.1.2",
    "1.2.840.10008.5.1.4.1.1.13.1.3", "1.2.840.10008.5.1.4.1.1.13.1.4",
    "1.2.840.10008.5.1.4.1.1.13.1.5", "1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.131",
    "1.2.840.10008.5.1.4.1.1.14.1", "1.2.840.10008.5.1.4.1.1.14.2", "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2", "1.2.840.10008.5.1.4.1.1.20",
    "1.2.840.10008.5.1.4.1.1.200.2", "1.2.840.10008.5.1.4.1.1.200.8", "1.2.840.10008.5.1.4.1.1.3.1",
    "1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1",
    "1.2.840.10008.5.1.4.1.1.4.2", "1.2.840.10008.5.1.4.1.1.4.3", "1.2.840.10008.5.1.4.1.1.4.4",
    "1.2.840.10008.5.1.4.1.1.481.1", "1.2.840.10008.5.1.4.1.1.481.10", "1.2.840.10008.5.1.4.1.1.481.11",
    "1.2.840.10008.5.1.4.1.1.481.12", "1.2.840.10008.5.1.4.1.1.481.13",
    "1.2.840.10008.5.1.4.1.1.481.14", "1.2.840.10008.5.1.4.1.1.481.15",
    "1.2.840.10008.5.1.4.1.1.481.16", "1.2.840.10008.5.1.4.1.1.481.17",
    "1.2.840.10008.5.1.4.1.1.481.18", "1.2.840.10008.5.1.4.1.1.481.19", "1.2.840.10008.5.1.4.1.1.481.2",
    "1.2.840.10008.5.1.4.1.1.481.20", "1.2.840.10008.5.1.4.1.1.481.21",
    "1.2.840.10008.5.1.4.1.1.481.22", "1.2.840.10008.5.1.4.1.1.481.23",
    "1.2.840.10008.5.1.4.1.1.481.24", "1.2.840.10008.5.1.4.1.1.481.25", "1.2.840.10008.5.1.4.1.1.481.3",
    "1.2.840.10008.5.1.4.1.1.481.4", "1.2.840.10008.5.1.4.1.1.481.5", "1.2.840.10008.5.1.4.1.1.481.6",
    "1.2.840.10008.5.1.4.1.1.481.7", "1.2.840.10008.5.1.4.1.1.481.8", "1.2.840.10008.5.1.4.1.1.481.9",
    "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.6.2", "1.2.840.10008.5.1.4.1.1.6.3",
    "1.2.840.10008.5.1.4.1.1.66", "1.2.840.10008.5.1.4.1.1.66.1", "1.2.840.10008.5.1.4.1.1.66.2",
    "1.2.840.10008.5.1.4.1.1.66.3", "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.5",
    "1.2.840.10008.5.1.4.1.1.66.6", "1.2.840.10008.5.1.4.1.1.66.7", "1.2.840.10008.5.1.4.1.1.66.8",
    "1.2.840.10008.5.1.4.1.1.67", "1.2.840.10008.5.1.4.1.1.68.1", "1.2.840.10008.5.1.4.1.1.68.2",
    "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4", "1.2.840.10008.5.1.4.1.1.77.1.1",
    "1.2.840.10008.5.1.4.1.1.77.1.1.1", "1.2.840.10008.5.1.4.1.1.77.1.2",
    "1.2.840.10008.5.1.4.1.1.77.1.2.1", "1.2.840.10008.5.1.4.1.1.77.1.3",
    "1.2.840.10008.5.1.4.1.1.77.1.4", "1.2.840.10008.5.1.4.1.1.77.1.4.1",
    "1.2.840.10008.5.1.4.1.1.77.1.5.1", "1.2.840.10008.5.1.4.1.1.77.1.5.2",
    "1.2.840.10008.5.1.4.1.1.77.1.5.3", "1.2.840.10008.5.1.4.1.1.77.1.5.4",
    "1.2.840.10008.5.1.4.1.1.77.1.5.5", "1.2.840.10008.5.1.4.1.1.77.1.5.6",
    "1.2.840.10008.5.1.4.1.1.77.1.5.7", "1.2.840.10008.5.1.4.1.1.77.1.5.8",
    "1.2.840.10008.5.1.4.1.1.77.1.6", "1.2.840.10008.5.1.4.1.1.77.1.7",
    "1.2.840.10008.5.1.4.1.1.77.1.8", "1.2.840.10008.5.1.4.1.1.77.1.9", "1.2.840.10008.5.1.4.1.1.78.1",
    "1.2.840.10008.5.1.4.1.1.78.2", "1.2.840.10008.5.1.4.1.1.78.3", "1.2.840.10008.5.1.4.1.1.78.4",
    "1.2.840.10008.5.1.4.1.1.78.5", "1.2.840.10008.5.1.4.1.1.78.6", "1.2.840.10008.5.1.4.1.1.78.7",
    "1.2.840.10008.5.1.4.1.1.78.8", "1.2.840.10008.5.1.4.1.1.79.1", "1.2.840.10008.5.1.4.1.1.80.1",
    "1.2.840.10008.5.1.4.1.1.81.1", "1.2.840.10008.5.1.4.1.1.82.1", "1.2.840.10008.5.1.4.1.1.88.11",
    "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34",
    "1.2.840.10008.5.1.4.1.1.88.35", "1.2.840.10008.5.1.4.1.1.88.50", "1.2.840.10008.5.1.4.1.1.88.59",
    "1.2.840.10008.5.1.4.1.1.88.65", "1.2.840.10008.5.1.4.1.1.88.67", "1.2.840.10008.5.1.4.1.1.88.68",
    "1.2.840.10008.5.1.4.1.1.88.69", "1.2.840.10008.5.1.4.1.1.88.70", "1.2.840.10008.5.1.4.1.1.88.71",
    "1.2.840.10008.5.1.4.1.1.88.72", "1.2.840.10008.5.1.4.1.1.88.73", "1.2.840.10008.5.1.4.1.1.88.74",
    "1.2.840.10008.5.1.4.1.1.88.75", "1.2.840.10008.5.1.4.1.1.88.76", "1.2.840.10008.5.1.4.1.1.88.77",
    "1.2.840.10008.5.1.4.1.1.9.1.1", "1.2.840.10008.5.1.4.1.1.9.1.2", "1.2.840.10008.5.1.4.1.1.9.1.3",
    "1.2.840.10008.5.1.4.1.1.9.1.4", "1.2.840.10008.5.1.4.1.1.9.100.1",
    "1.2.840.10008.5.1.4.1.1.9.100.2", "1.2.840.10008.5.1.4.1.1.9.2.1", "1.2.840.10008.5.1.4.1.1.9.3.1",
    "1.2.840.10008.5.1.4.1.1.9.4.1", "1.2.840.10008.5.1.4.1.1.9.4.2", "1.2.840.10008.5.1.4.1.1.9.5.1",
    "1.2.840.10008.5.1.4.1.1.9.6.1", "1.2.840.10008.5.1.4.1.1.9.6.2", "1.2.840.10008.5.1.4.1.1.9.7.1",
    "1.2.840.10008.5.1.4.1.1.9.7.2", "1.2.840.10008.5.1.4.1.1.9.7.3", "1.2.840.10008.5.1.4.1.1.9.7.4",
    "1.2.840.10008.5.1.4.1.1.9.8.1", "1.2.840.10008.5.1.4.1.1.90.1", "1.2.840.10008.5.1.4.1.1.91.1",
    "1.2.840.10008.5.1.4.34.10", "1.2.840.10008.5.1.4.34.7",
})
_WITH_PATIENT_STUDY_MODULES = (
    "patient", "clinical-trial-subject", "general-study", "patient-study", "clinical-trial-study",
)

_WITHOUT_PATIENT_STUDY = frozenset({
    "1.2.840.10008.5.1.4.1.1.88.40",
})
_WITHOUT_PATIENT_STUDY_MODULES = (
    "patient", "clinical-trial-subject", "general-study", "clinical-trial-study",
)


def patient_and_study_keywords(sop_class_uid: str) -> frozenset[str]:
    """Keywords of the top-level attributes of the Patient and Study modules of the IOD of
    ``sop_class_uid`` (empty for an unknown SOP class or an IOD without them)."""
    if sop_class_uid in _WITH_PATIENT_STUDY:
        return frozenset().union(*(MODULE_KEYWORDS[m] for m in _WITH_PATIENT_STUDY_MODULES))
    if sop_class_uid in _WITHOUT_PATIENT_STUDY:
        return frozenset().union(*(MODULE_KEYWORDS[m] for m in _WITHOUT_PATIENT_STUDY_MODULES))
    return frozenset()
