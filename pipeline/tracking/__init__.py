"""MLflow runs, the model registry, the logged generator model, model cards and storage URIs."""
