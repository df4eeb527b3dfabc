"""Corpus schema, manifests, validation, the MELD-ST loader, the synthetic twin and sampling.

Import from the submodules (`data.io.resolve_data`, `data.manifest.read_manifest`, ...). This
package imports nothing itself, so `data.schema` stays cheap for the CLIs' `--help` and
`python -m ermgap_ray.data.synthetic` never loads its own module twice.
"""
