"""Presets: real teachers and real data, installed offline (see ``scripts/install_assets.sh``)."""
