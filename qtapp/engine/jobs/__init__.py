"""Running one job: the orchestrator from model to renamed output (job) and the child-process
entry that runs it for the window and the command line (worker)."""
