"""The DICOM objects of one mr-muscle result, built by the CT pipeline's reporting on the MR.

The SEG, uncertainty Parametric Map and TID 1500 SR are exactly those of ct-muscle
(:func:`acqflow.plugins.ct_muscle.reporting.dicom_outputs`), computed on the MR volume so that
they reference the MR instances and frame of reference. Only what identifies the run
differs: UIDs derive from the input identity, its content, the mr-muscle pipeline
version and both model versions; the device is "mr-muscle"; the algorithm names the
generator and the U-net; output names start with ``mr-muscle-``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from acqflow.models.store import ModelCard
from acqflow.plugins.api import DicomOutput
from acqflow.plugins.common.dicom_outputs import AlgorithmInfo, DeviceInfo
from acqflow.plugins.ct_muscle.reporting import OutputContext

__all__ = ["MrOutputContext", "renamed"]


@dataclass(frozen=True)
class MrOutputContext(OutputContext):
    """ct-muscle's output context with the MR run's identity, device and algorithm."""

    generator_card: ModelCard | None = None

    def run_entropy(self) -> list[str]:
        """What identifies the run apart from the content: input, pipeline, both models."""
        generator = self.generator_card.version if self.generator_card is not None else ""
        return [self.identity, "mr-muscle", self.pipeline_version, generator, self.card.version]

    @property
    def device(self) -> DeviceInfo:
        generator = self.generator_card.version if self.generator_card is not None else "none"
        return DeviceInfo(
            manufacturer="acqflow",
            model_name="mr-muscle",
            software_version=f"{self.pipeline_version} translation {generator} "
            f"segmentation {self.card.version}",
        )

    @property
    def algorithm(self) -> AlgorithmInfo:
        generator = self.generator_card
        prefix = f"{generator.name} {generator.architecture} + " if generator is not None else ""
        version = f"{generator.version}+{self.card.version}" if generator is not None else self.card.version
        return AlgorithmInfo(name=f"{prefix}{self.card.name} {self.card.architecture}", version=version)


def renamed(outputs: Sequence[DicomOutput]) -> list[DicomOutput]:
    """ct-muscle's output names with the mr-muscle prefix."""
    out = []
    for output in outputs:
        name = output.name.replace("ct-muscle", "mr-muscle", 1)
        out.append(DicomOutput(name, output.dataset))
    return out
