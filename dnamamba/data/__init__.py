"""Genome data: FASTA and BED readers, windows over records, and the Lightning data module."""
