import DaxlabCLI

runDaxlab()
