//! Agent: takes jobs from a hub and runs them sandboxed (being built; see the agent and sandbox issue).
