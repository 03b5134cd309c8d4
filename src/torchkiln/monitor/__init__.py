"""Monitoring: drift statistics, the drift detector, calibrated thresholds and alert state."""
