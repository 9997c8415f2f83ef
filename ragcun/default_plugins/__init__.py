"""The built-in components, registered through the same hooks as any third-party plugin."""
