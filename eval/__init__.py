"""Evaluation: UAR / WAR / weighted F1, label parsing from free text, EMER reasoning scores, reports."""
