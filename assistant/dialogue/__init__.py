"""The dialogue engine: conversation state, policies from the YAML data, rendering replies.

``domain`` loads and merges the domain files and renders response templates; ``policy`` reads
rules and stories; ``store`` persists conversations; ``engine`` runs one turn.
"""
