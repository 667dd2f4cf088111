"""The benchmark report: tables, figures, and the page that lays them out."""
