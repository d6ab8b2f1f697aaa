using Microsoft.Extensions.Logging;

namespace Ferry.Cli.Commands;

/// <summary>One log line per event on stderr, UTC timestamps: the same shape for every daemon.</summary>
internal static class DaemonLogging
{
    public static ILoggerFactory Create() => LoggerFactory.Create(b =>
    {
        b.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ ";
            o.UseUtcTimestamp = true;
        });
        b.SetMinimumLevel(LogLevel.Information);
    });
}
