"""The only place that knows verl internals: plugin entry, patches, CPU platform and rollout."""
