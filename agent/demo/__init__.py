"""The live demo: simulated PLCs, a local Prodsmart sandbox and the real agent."""
