"""Tools that use a trained model: embed, search, export, figures and the run report."""
