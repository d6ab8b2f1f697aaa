using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Ferry.Quic.Tests;

namespace Ferry.NetworkTests.Infrastructure;

/// <summary>
/// One TCP connection, made from inside a namespace to a client's port forward whose far end echoes, fed deterministic
/// bytes at a steady pace for as long as it runs and checked byte for byte as they come back: the same connection has to
/// survive every path change in between, since a broken flow closes it and cannot be resumed.
/// </summary>
internal sealed class ContinuousTransfer : IAsyncDisposable
{
    // 16 KiB every 50 ms (320 KiB/s): enough to show which path carries the data, little enough for two cores and a delayed relay.
    private const int Chunk = 16 * 1024;
    private static readonly TimeSpan Pace = TimeSpan.FromMilliseconds(50);
    private const int Block = 64 * 1024;

    private readonly Socket _socket;
    private readonly DeterministicData _data = new(seed: 6);
    private readonly CancellationTokenSource _stopSending = new();
    private readonly CancellationTokenSource _abort = new();
    private readonly TaskCompletionSource _endOfStream = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly Task _writer;
    private readonly Task _reader;
    private long _sent;
    private long _received;
    private long _lastByteTicks;
    private long _longestStallTicks;
    private volatile string? _fault;

    private ContinuousTransfer(Socket socket)
    {
        _socket = socket;
        _writer = Task.Run(WriteAsync);
        _reader = Task.Run(ReadAsync);
    }

    /// <summary>Connects from namespace <paramref name="ns"/> to <paramref name="forward"/> and starts sending.</summary>
    public static async Task<ContinuousTransfer> StartAsync(string ns, IPEndPoint forward, CancellationToken ct)
    {
        var socket = NetNamespace.Create(ns, () => new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true });
        using var bound = CancellationTokenSource.CreateLinkedTokenSource(ct);
        bound.CancelAfter(TimeSpan.FromSeconds(10));
        try
        {
            await socket.ConnectAsync(forward, bound.Token);
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException)
        {
            socket.Dispose();
            throw new Xunit.Sdk.XunitException($"cannot connect to the client's port forward {forward} in namespace {ns}: {e.Message}");
        }
        return new ContinuousTransfer(socket);
    }

    public long Sent => Interlocked.Read(ref _sent);

    /// <summary>Bytes echoed back and found equal to what was sent at their position.</summary>
    public long Received => Interlocked.Read(ref _received);

    /// <summary>Why the stream is broken (closed early, reset, or a wrong byte), or null while it is intact.</summary>
    public string? Fault => _fault;

    /// <summary>The longest time without a byte coming back so far: how long path changes held the stream up.</summary>
    public TimeSpan LongestStall => TimeSpan.FromTicks(Received == 0 ? 0 : Math.Max(Interlocked.Read(ref _longestStallTicks), _clock.Elapsed.Ticks - Interlocked.Read(ref _lastByteTicks)));

    public override string ToString()
        => $"transfer: sent {Sent} B, echoed back intact {Received} B, longest stall {LongestStall.TotalMilliseconds:0} ms, running {_clock.Elapsed.TotalSeconds:0.0} s, {(Fault is null ? "intact so far" : "BROKEN: " + Fault)}";

    private async Task WriteAsync()
    {
        var buffer = new byte[Chunk];
        using var timer = new PeriodicTimer(Pace);
        try
        {
            while (await timer.WaitForNextTickAsync(_stopSending.Token))
            {
                _data.Fill(buffer, _sent);
                // Counted before the send returns: the echo of its first bytes can be back before it does.
                Interlocked.Add(ref _sent, Chunk);
                await _socket.SendAsync(buffer, SocketFlags.None, _abort.Token);
            }
        }
        catch (OperationCanceledException) when (_stopSending.IsCancellationRequested && !_abort.IsCancellationRequested)
        {
            // Done sending: the half-close below makes the echo end too, after the last byte.
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            _fault ??= $"sending failed after {Sent} B: {e.Message}";
            return;
        }
        try
        {
            _socket.Shutdown(SocketShutdown.Send);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            _fault ??= $"half-closing failed after {Sent} B: {e.Message}";
        }
    }

    private async Task ReadAsync()
    {
        var buffer = new byte[Block];
        var expected = new byte[Block];
        long expectedStart = -1;
        try
        {
            while (true)
            {
                var n = await _socket.ReceiveAsync(buffer, SocketFlags.None, _abort.Token);
                if (n == 0)
                {
                    if (!_stopSending.IsCancellationRequested || Received != Sent)
                    {
                        _fault ??= $"the stream was closed by the far side after {Received} of {Sent} B";
                    }
                    _endOfStream.TrySetResult();
                    return;
                }
                var now = _clock.Elapsed.Ticks;
                var gap = now - Interlocked.Exchange(ref _lastByteTicks, now);
                // Stalls count from the first byte back: opening the flow is not a path change.
                if (Received > 0 && gap > Interlocked.Read(ref _longestStallTicks))
                {
                    Interlocked.Exchange(ref _longestStallTicks, gap);
                }
                for (var done = 0; done < n;)
                {
                    var position = Received;
                    var blockStart = position / Block * Block;
                    if (blockStart != expectedStart)
                    {
                        _data.Fill(expected, blockStart);
                        expectedStart = blockStart;
                    }
                    var offset = (int)(position - blockStart);
                    var length = Math.Min(n - done, Block - offset);
                    var got = buffer.AsSpan(done, length);
                    var want = expected.AsSpan(offset, length);
                    var differs = got.CommonPrefixLength(want);
                    if (differs < length)
                    {
                        _fault ??= $"byte {position + differs} came back as 0x{got[differs]:x2}, sent as 0x{want[differs]:x2}";
                        _endOfStream.TrySetResult();
                        return;
                    }
                    Interlocked.Add(ref _received, length);
                    done += length;
                }
                if (Received > Sent)
                {
                    _fault ??= $"{Received} B came back but only {Sent} B were sent";
                }
            }
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            _fault ??= $"receiving failed after {Received} of {Sent} B: {e.Message}";
            _endOfStream.TrySetResult();
        }
    }

    /// <summary>Waits until <paramref name="bytes"/> more come back intact, failing at once if the stream breaks.</summary>
    public async Task WaitForProgressAsync(long bytes, TimeSpan timeout, string what, Func<string> diagnostics)
    {
        var target = Received + bytes;
        var deadline = Stopwatch.StartNew();
        while (Received < target)
        {
            if (Fault is { } fault)
            {
                throw new Xunit.Sdk.XunitException($"the stream broke {what}: {fault}\n{this}{diagnostics()}");
            }
            if (deadline.Elapsed > timeout)
            {
                throw new Xunit.Sdk.XunitException($"fewer than {bytes} B came back within {timeout.TotalSeconds:0} s {what}\n{this}{diagnostics()}");
            }
            await Task.Delay(50, TestContext.Current.CancellationToken);
        }
    }

    /// <summary>Stops sending, half-closes, and requires every byte sent to come back intact, then the echo's end of stream.</summary>
    public async Task CompleteAsync(TimeSpan timeout, Func<string> diagnostics)
    {
        await _stopSending.CancelAsync();
        try
        {
            await _endOfStream.Task.WaitAsync(timeout);
        }
        catch (TimeoutException)
        {
            throw new Xunit.Sdk.XunitException($"the echo did not finish within {timeout.TotalSeconds:0} s of the half-close\n{this}{diagnostics()}");
        }
        await _writer;
        if (Fault is { } fault)
        {
            throw new Xunit.Sdk.XunitException($"the stream broke: {fault}\n{this}{diagnostics()}");
        }
        if (Received != Sent || Sent == 0)
        {
            throw new Xunit.Sdk.XunitException($"{Sent} B were sent and {Received} B came back before the end of stream\n{this}{diagnostics()}");
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stopSending.CancelAsync();
        await _abort.CancelAsync();
        _socket.Dispose();
        await Task.WhenAll(_writer, _reader).WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        _stopSending.Dispose();
        _abort.Dispose();
    }
}
