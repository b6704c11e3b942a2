"""What the stage programs share: their error and main, graders, sandbox, problem loaders, decontamination,
the eval protocol and report. Libraries, not programs (decontam also has an `export` command)."""
