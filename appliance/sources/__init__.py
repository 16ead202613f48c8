"""Where tensors come from and go to: torch tensors, safetensors files, Hugging Face model dirs.

Owns: adapting torch tensors to byte views (``tensors``), importing ``.safetensors`` files and
sharded model directories, and exporting to safetensors (``safetensors_io``). Nothing here
unpickles: safetensors is the only file format read, through its own bounded parser.
"""
