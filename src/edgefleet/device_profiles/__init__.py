"""Built-in device profiles: one YAML file per target, validated by edgefleet.contract.profiles."""
