"""The Streamlit explorer. Reads the warehouse only through `warehouse` named queries;
never imports torch or Ray."""
