"""Pure tensor math of the method: KL weights, variance estimators, aggregators, telemetry. No verl imports."""
