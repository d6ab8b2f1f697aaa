using System.Buffers;
using System.Diagnostics;
using System.Net;
using Ferry.Quic;

namespace Ferry.Benchmarks;

/// <summary>A Ferry QUIC server endpoint on loopback that reads each stream to its end and answers one byte, plus a client endpoint.</summary>
internal sealed class QuicTarget : IAsyncDisposable
{
    private readonly QuicEndpoint _server;
    private readonly QuicEndpoint _client;
    private readonly QuicTlsOptions _clientTls;
    private readonly CancellationTokenSource _cts = new();
    private readonly Task _acceptLoop;
    private QuicConnection? _shared;

    public QuicTarget(BenchPki pki)
    {
        _server = QuicEndpoint.Bind(new QuicEndpointOptions
        {
            LocalEndPoint = new IPEndPoint(IPAddress.Loopback, 0),
            ServerTls = new QuicTlsOptions { Certificate = pki.Server, TrustedCa = pki.Ca },
            // Request/response cases open tens of thousands of streams; credit comes back as they close.
            ServerConnectionOptions = new QuicConnectionOptions { MaxInboundBidirectionalStreams = 1000 },
            AcceptQueueLength = 256,
        });
        _client = QuicEndpoint.Bind(new QuicEndpointOptions { LocalEndPoint = new IPEndPoint(IPAddress.Loopback, 0) });
        _clientTls = new QuicTlsOptions { Certificate = pki.Client, TrustedCa = pki.Ca };
        _acceptLoop = Task.Run(AcceptLoopAsync);
    }

    /// <summary>One connection reused by the stream cases, made on first use.</summary>
    private async Task<QuicConnection> SharedAsync(CancellationToken ct) => _shared ??= await ConnectAsync(ct);

    private ValueTask<QuicConnection> ConnectAsync(CancellationToken ct) => _client.ConnectAsync(_server.LocalEndPoint, _clientTls, null, ct);

    /// <summary>Sends <paramref name="size"/> bytes on one new stream of a fresh connection; time until the server has them all.</summary>
    public async Task<TimeSpan> BulkAsync(long size, byte[] chunk, CancellationToken ct)
    {
        await using var connection = await ConnectAsync(ct);
        await using var stream = await connection.OpenBidirectionalStreamAsync(ct);
        var watch = Stopwatch.StartNew();
        for (long sent = 0; sent < size; sent += chunk.Length)
        {
            await stream.WriteAsync(chunk.AsMemory(0, (int)Math.Min(chunk.Length, size - sent)), ct);
        }

        stream.CompleteWrites();
        await ReadReplyAsync(stream, ct);
        return watch.Elapsed;
    }

    /// <summary>Per request: open a stream on the existing connection, send one byte, read the one-byte reply.</summary>
    public async Task<TimeSpan> StreamRequestsAsync(int count, CancellationToken ct)
    {
        var connection = await SharedAsync(ct);
        byte[] request = [1];
        var watch = Stopwatch.StartNew();
        for (int i = 0; i < count; i++)
        {
            await using var stream = await connection.OpenBidirectionalStreamAsync(ct);
            await stream.WriteAsync(request, completeWrites: true, ct);
            await ReadReplyAsync(stream, ct);
        }

        return watch.Elapsed;
    }

    /// <summary>Per request: a new connection (mutual-TLS handshake), one stream, one byte each way, close.</summary>
    public async Task<TimeSpan> ConnectionRequestsAsync(int count, CancellationToken ct)
    {
        byte[] request = [1];
        var watch = Stopwatch.StartNew();
        for (int i = 0; i < count; i++)
        {
            await using var connection = await ConnectAsync(ct);
            await using var stream = await connection.OpenBidirectionalStreamAsync(ct);
            await stream.WriteAsync(request, completeWrites: true, ct);
            await ReadReplyAsync(stream, ct);
        }

        return watch.Elapsed;
    }

    // Reads to the end of the stream: a request counts as done when the reply and its FIN are in.
    private static async Task ReadReplyAsync(QuicStream stream, CancellationToken ct)
    {
        var buffer = new byte[2];
        int total = 0;
        for (int n; (n = await stream.ReadAsync(buffer.AsMemory(Math.Min(total, 1)), ct)) > 0; )
        {
            total += n;
        }

        if (total != 1)
        {
            throw new InvalidOperationException($"expected a one-byte reply, got {total} bytes");
        }
    }

    private async Task AcceptLoopAsync()
    {
        try
        {
            while (true)
            {
                var connection = await _server.AcceptConnectionAsync(_cts.Token);
                _ = Task.Run(() => ServeConnectionAsync(connection));
            }
        }
        catch (Exception e) when (e is OperationCanceledException or QuicException or ObjectDisposedException)
        {
            // Shut down.
        }
    }

    private async Task ServeConnectionAsync(QuicConnection connection)
    {
        await using (connection)
        {
            try
            {
                while (true)
                {
                    var stream = await connection.AcceptStreamAsync(_cts.Token);
                    _ = Task.Run(() => ServeStreamAsync(stream));
                }
            }
            catch (Exception e) when (e is OperationCanceledException or QuicException)
            {
                // The client closed the connection, or the benchmark ended.
            }
        }
    }

    private async Task ServeStreamAsync(QuicStream stream)
    {
        await using (stream)
        {
            try
            {
                // Pooled: a fresh 256 KiB (large-object heap) array per one-byte request cost more than the request itself.
                var buffer = ArrayPool<byte>.Shared.Rent(256 * 1024);
                try
                {
                    while (await stream.ReadAsync(buffer, _cts.Token) > 0)
                    {
                    }
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                }

                await stream.WriteAsync(new byte[] { 2 }, completeWrites: true, _cts.Token);
            }
            catch (Exception e) when (e is OperationCanceledException or QuicException)
            {
                // The connection went away mid-stream.
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _cts.CancelAsync();
        if (_shared is not null)
        {
            await _shared.DisposeAsync();
        }

        await _client.DisposeAsync();
        await _server.DisposeAsync();
        await _acceptLoop.WaitAsync(TimeSpan.FromSeconds(10));
        _cts.Dispose();
    }
}
