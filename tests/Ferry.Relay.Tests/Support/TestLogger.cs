using Microsoft.Extensions.Logging;

namespace Ferry.Relay.Tests.Support;

/// <summary>Writes log lines to the current test's output, so a failing test shows what the relay saw.</summary>
internal sealed class TestLogger<T>(string name) : ILogger<T>
{
    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Information;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (IsEnabled(logLevel))
        {
            Bounded.Log($"{DateTime.UtcNow:HH:mm:ss.fff} [{name}] {logLevel} {eventId.Id}: {formatter(state, exception)}{(exception is null ? string.Empty : " " + exception.Message)}");
        }
    }
}
