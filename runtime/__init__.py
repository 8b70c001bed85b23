"""Carries out an ftcompile plan. Decides nothing the plan does not state."""
