using System.CommandLine;
using Ferry.Client;
using Ferry.Connector;
using Ferry.Core.Tokens;

namespace Ferry.Cli.Commands;

/// <summary>The 'ferry' command tree: one sub-command per part (controller, connector, client, admin).</summary>
public static class FerryCommandLine
{
    public static async Task<int> RunAsync(string[] args)
    {
        var root = new RootCommand("Ferry: zero-trust access to private services through connectors that only dial out.");
        root.Subcommands.Add(ControllerCommand.Create());
        root.Subcommands.Add(ConnectorCommand.Create());
        root.Subcommands.Add(RelayCommand.Create());
        root.Subcommands.Add(ClientCommand.Create());
        root.Subcommands.Add(AdminCommand.Create());
        root.Subcommands.Add(StatusCommand.Create());
        root.Subcommands.Add(VersionCommand());
        return await root.Parse(args).InvokeAsync();
    }

    private static Command VersionCommand()
    {
        var command = new Command("version", "Print Ferry's version.");
        command.SetAction(_ => Console.WriteLine(Ferry.Core.ControlPlane.HostFacts.Version));
        return command;
    }

    /// <summary>Runs a command body, turning every expected failure into "error: …" on stderr and an exit code.</summary>
    public static async Task<int> GuardAsync(Func<Task<int>> body)
    {
        try
        {
            return await body();
        }
        catch (CliException e)
        {
            return Fail(e.Message, e.ExitCode);
        }
        catch (Exception e) when (e is ArgumentException or TokenFileException or Ferry.Core.ControlPlane.TokensRejectedException or SignInRefusedException or InvalidOperationException or IOException or UnauthorizedAccessException)
        {
            return Fail(e.Message, 1);
        }
        catch (OperationCanceledException)
        {
            return 130;
        }
    }

    private static int Fail(string message, int code)
    {
        Console.Error.WriteLine($"error: {message}");
        return code;
    }
}
