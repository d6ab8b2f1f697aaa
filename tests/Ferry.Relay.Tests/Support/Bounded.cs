namespace Ferry.Relay.Tests.Support;

/// <summary>Every await in these tests is bounded, so a hang fails fast instead of eating CI time.</summary>
internal static class Bounded
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    public static CancellationToken Ct => TestContext.Current.CancellationToken;

    public static Task Within(this Task task) => task.WaitAsync(Timeout, Ct);

    public static Task<T> Within<T>(this Task<T> task) => task.WaitAsync(Timeout, Ct);

    public static Task<T> Within<T>(this ValueTask<T> task) => task.AsTask().WaitAsync(Timeout, Ct);

    public static Task Within(this ValueTask task) => task.AsTask().WaitAsync(Timeout, Ct);

    /// <summary>Waits for a condition that some other task makes true (counters updated by the relay), checking often, bounded.</summary>
    public static async Task UntilAsync(Func<bool> condition, string what, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? Timeout);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"Timed out waiting for: {what}");
            }

            await Task.Delay(10, Ct);
        }
    }

    public static void Log(string message)
    {
        try
        {
            TestContext.Current.TestOutputHelper?.WriteLine(message);
        }
        catch (InvalidOperationException)
        {
            // The test already finished; late log lines from background tasks are dropped.
        }
    }
}
