"""Expert rollouts to datasets on disk: format, manifest, verification and loading."""
