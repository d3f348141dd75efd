"""Label Studio services: provision a project, push review tasks, pull annotations back."""
