"""Training code for the IdentityDP renderer. Inference never imports this package."""
