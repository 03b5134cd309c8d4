"""Forecasting: one or more time series -> quantile forecasts of the next steps, with backtests."""
