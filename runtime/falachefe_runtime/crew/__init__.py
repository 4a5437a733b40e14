"""The crew worker: a company's CrewAI crew answering its users' messages."""
