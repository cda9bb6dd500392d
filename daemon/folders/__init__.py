"""Watched folders: the watcher, the inputs an image file becomes, and file naming."""
