//! Sandbox: one command under limits and isolation (being built; see the agent and sandbox issue).
