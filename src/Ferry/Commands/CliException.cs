namespace Ferry.Cli.Commands;

/// <summary>A failure to report as one readable line and a non-zero exit code, never a stack trace.</summary>
public sealed class CliException(string message, int exitCode = 1) : Exception(message)
{
    public int ExitCode { get; } = exitCode;
}
