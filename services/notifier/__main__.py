from flead.cli_alerts import run

if __name__ == "__main__":
    run()
