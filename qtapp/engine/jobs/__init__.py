"""Running one job: the orchestrator from model to renamed output (job), the child-process
entry that runs it (worker), and the one client that starts a worker and reads its events for
the window, the command line and the plan probe (client)."""
