"""Diagnostics: value curves along held-out video, Spearman, value spread, effective rank."""
