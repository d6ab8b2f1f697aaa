using Ferry.Cli.Commands;

return await FerryCommandLine.RunAsync(args);
