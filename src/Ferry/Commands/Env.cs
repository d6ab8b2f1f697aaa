namespace Ferry.Cli.Commands;

/// <summary>Environment variables as option fallbacks; an empty variable counts as unset.</summary>
internal static class Env
{
    public static string? Get(string name) => Environment.GetEnvironmentVariable(name) is { Length: > 0 } value ? value : null;
}
