"""The faces: the command line, the REST API and the Streamlit app's shared code; they call the facade and format what it returns."""
