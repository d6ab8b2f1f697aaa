using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace Ferry.Stun.Tests;

/// <summary>Shared helpers for the STUN tests.</summary>
internal static class TestSupport
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    public static byte[] Hex(string text)
    {
        var clean = new string(text.Where(Uri.IsHexDigit).ToArray());
        return Convert.FromHexString(clean);
    }

    /// <summary>Quick client settings: loopback answers in microseconds, so 50 ms is generous.</summary>
    public static StunClientOptions FastClient() => new()
    {
        InitialRto = TimeSpan.FromMilliseconds(50),
        MaxTransmissions = 5,
        FinalWaitMultiplier = 4,
    };

    public static StunServerOptions LoopbackServer(params IPEndPoint[] endPoints) => new()
    {
        EndPoints = endPoints.Length > 0 ? endPoints : [new IPEndPoint(IPAddress.Loopback, 0)],
        RequestsPerSecondPerSource = 100_000,
        BurstPerSource = 100_000,
    };

    public static bool IPv6LoopbackAvailable()
    {
        if (!Socket.OSSupportsIPv6)
        {
            return false;
        }

        try
        {
            using var probe = new Socket(AddressFamily.InterNetworkV6, SocketType.Dgram, ProtocolType.Udp);
            probe.Bind(new IPEndPoint(IPAddress.IPv6Loopback, 0));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    /// <summary>Finds an executable on PATH (or in the usual Debian places).</summary>
    public static string? FindExecutable(string name)
    {
        var dirs = (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Concat(["/usr/bin", "/usr/sbin", "/usr/local/bin"]);
        return dirs.Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);
    }

    public static int FreeUdpPort()
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)socket.LocalEndPoint!).Port;
    }

    public static void Output(string line) => TestContext.Current.TestOutputHelper?.WriteLine(line);

    /// <summary>Builds a Binding request with extra raw attributes and, by default, FINGERPRINT.</summary>
    public static byte[] BindingRequest(StunTransactionId id, bool fingerprint = true, params (ushort Type, byte[] Value)[] attributes)
    {
        var buffer = new byte[2048];
        var writer = new StunMessageWriter(buffer, StunMessageType.BindingRequest, id);
        foreach (var (type, value) in attributes)
        {
            writer.AddAttribute(type, value);
        }

        if (fingerprint)
        {
            writer.AddFingerprint();
        }

        return writer.Written.ToArray();
    }

    /// <summary>Runs a process with a hard time limit and returns its exit code and output.</summary>
    public static async Task<(int ExitCode, string Output)> RunProcessAsync(string file, IEnumerable<string> args, TimeSpan limit)
    {
        var info = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        using var process = Process.Start(info) ?? throw new InvalidOperationException($"Could not start {file}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            await process.WaitForExitAsync().WaitAsync(limit);
        }
        catch (TimeoutException)
        {
            process.Kill(entireProcessTree: true);
            throw;
        }

        return (process.ExitCode, await stdout.WaitAsync(Timeout) + await stderr.WaitAsync(Timeout));
    }
}

/// <summary>A clock tests move by hand; timers fire when <see cref="Advance"/> passes their due time.</summary>
internal sealed class ManualTimeProvider : TimeProvider
{
    private readonly Lock _lock = new();
    private readonly List<ManualTimer> _timers = [];
    private readonly SemaphoreSlim _timerCreated = new(0);
    private long _ticks = TimeSpan.TicksPerDay;

    public override long TimestampFrequency => TimeSpan.TicksPerSecond;

    public override long GetTimestamp()
    {
        lock (_lock)
        {
            return _ticks;
        }
    }

    public override DateTimeOffset GetUtcNow() => DateTimeOffset.UnixEpoch.AddTicks(GetTimestamp());

    public int ActiveTimers
    {
        get
        {
            lock (_lock)
            {
                return _timers.Count(t => t.DueAt >= 0);
            }
        }
    }

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        var timer = new ManualTimer(this, callback, state);
        lock (_lock)
        {
            _timers.Add(timer);
        }

        timer.Change(dueTime, period);
        _timerCreated.Release();
        return timer;
    }

    /// <summary>Waits until code under test has armed a timer, so advancing the clock cannot outrun it.</summary>
    public Task WaitForTimerAsync() => _timerCreated.WaitAsync(TestContext.Current.CancellationToken);

    public void Advance(TimeSpan by)
    {
        List<ManualTimer> due;
        lock (_lock)
        {
            _ticks += by.Ticks;
            due = [.. _timers.Where(t => t.DueAt >= 0 && t.DueAt <= _ticks)];
            foreach (var t in due)
            {
                t.DueAt = t.Period > 0 ? _ticks + t.Period : -1;
            }
        }

        foreach (var t in due)
        {
            t.Fire();
        }
    }

    private void Remove(ManualTimer timer)
    {
        lock (_lock)
        {
            _timers.Remove(timer);
        }
    }

    private sealed class ManualTimer(ManualTimeProvider owner, TimerCallback callback, object? state) : ITimer
    {
        public long DueAt { get; set; } = -1;

        public long Period { get; private set; }

        public bool Change(TimeSpan dueTime, TimeSpan period)
        {
            lock (owner._lock)
            {
                DueAt = dueTime == global::System.Threading.Timeout.InfiniteTimeSpan ? -1 : owner._ticks + dueTime.Ticks;
                Period = period == global::System.Threading.Timeout.InfiniteTimeSpan ? 0 : period.Ticks;
            }

            return true;
        }

        public void Fire() => callback(state);

        public void Dispose() => owner.Remove(this);

        public ValueTask DisposeAsync()
        {
            Dispose();
            return ValueTask.CompletedTask;
        }
    }
}

/// <summary>An ILogger that keeps every message, so tests can see what the server logged.</summary>
internal sealed class CapturingLogger : ILogger
{
    public ConcurrentQueue<string> Messages { get; } = new();

    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
        Messages.Enqueue(string.Create(CultureInfo.InvariantCulture, $"{logLevel} {eventId.Id} {formatter(state, exception)}"));
}

/// <summary>Bounds every await in the tests, Kestrel style, so a hang fails fast.</summary>
internal static class TaskTimeoutExtensions
{
    public static Task<T> DefaultTimeout<T>(this Task<T> task) => task.WaitAsync(TestSupport.Timeout, TestContext.Current.CancellationToken);

    public static Task DefaultTimeout(this Task task) => task.WaitAsync(TestSupport.Timeout, TestContext.Current.CancellationToken);
}
