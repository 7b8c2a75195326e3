"""Predicting and planning."""
