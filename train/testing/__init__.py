"""Builders of tiny random models for tests and CPU recipes; never imported by the training runtime."""
