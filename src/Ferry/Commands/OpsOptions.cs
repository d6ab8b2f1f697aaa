using System.CommandLine;
using System.Net;
using Ferry.Core.Operations;

namespace Ferry.Cli.Commands;

/// <summary>The operations options every daemon shares: --metrics-listen, and --state for the local control socket.</summary>
internal static class OpsOptions
{
    public static Option<string?> MetricsListen() => new("--metrics-listen")
    {
        Description = "IP:PORT for plain-HTTP /healthz, /readyz and /metrics (Prometheus), or FERRY_METRICS_LISTEN; off when unset. Keep it on a monitoring network",
    };

    /// <summary>The --metrics-listen endpoint, or null when neither the option nor FERRY_METRICS_LISTEN is given.</summary>
    public static IPEndPoint? ParseMetricsListen(ParseResult parse, Option<string?> option)
    {
        var text = parse.GetValue(option) ?? Env.Get("FERRY_METRICS_LISTEN");
        try
        {
            return text is null ? null : OpsServer.ParseListen(text);
        }
        catch (ArgumentException e)
        {
            throw new CliException(e.Message, 2);
        }
    }

    /// <summary>--state of a connector or relay: its control socket lives there, as the client's does.</summary>
    public static Option<string> State(string kind) => new("--state")
    {
        Description = $"State folder of this {kind} (holds the control socket 'ferry status' asks), or FERRY_{kind.ToUpperInvariant()}_STATE; ~/.ferry/{kind} by default",
        DefaultValueFactory = _ => LocalControl.DefaultStateDirectory(kind),
    };
}
