"""Manifest files: the Parquet schemas (declared once, versioned), atomic writers and validating readers."""
