"""MANSCDP: the GB/T 28181 XML command language (GB/T 28181-2022 §9, Annex A)."""
