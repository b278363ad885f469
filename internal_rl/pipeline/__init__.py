"""The stages of `reproduce`, run folders, resume and report writing."""
