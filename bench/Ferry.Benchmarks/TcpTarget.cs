using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;

namespace Ferry.Benchmarks;

/// <summary>
/// A loopback TCP server, with or without TLS 1.3 (SslStream, mutual authentication against the bench CA). Protocol:
/// 'B' + 8-byte length + that many bytes, answered with one byte; or 'P' then one-byte pings, each answered with one byte.
/// </summary>
internal sealed class TcpTarget : IAsyncDisposable
{
    private readonly BenchPki _pki;
    private readonly bool _tls;
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly CancellationTokenSource _cts = new();
    private readonly Task _acceptLoop;
    private readonly SslStreamCertificateContext? _serverContext;
    private Stream? _shared;
    private TcpClient? _sharedClient;

    public TcpTarget(BenchPki pki, bool tls)
    {
        _pki = pki;
        _tls = tls;
        _serverContext = tls ? SslStreamCertificateContext.Create(pki.Server, null) : null;
        _listener.Start(512);
        _acceptLoop = Task.Run(AcceptLoopAsync);
    }

    private IPEndPoint EndPoint => (IPEndPoint)_listener.LocalEndpoint;

    public async Task<TimeSpan> BulkAsync(long size, byte[] chunk, CancellationToken ct)
    {
        var (client, stream) = await ConnectAsync(ct);
        using (client)
        await using (stream)
        {
            var header = new byte[9];
            header[0] = (byte)'B';
            BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(1), size);
            var watch = Stopwatch.StartNew();
            await stream.WriteAsync(header, ct);
            for (long sent = 0; sent < size; sent += chunk.Length)
            {
                await stream.WriteAsync(chunk.AsMemory(0, (int)Math.Min(chunk.Length, size - sent)), ct);
            }

            await stream.FlushAsync(ct);
            await stream.ReadExactlyAsync(new byte[1], ct);
            return watch.Elapsed;
        }
    }

    /// <summary>Per request: one byte each way on a connection made once.</summary>
    public async Task<TimeSpan> PingsOnExistingConnectionAsync(int count, CancellationToken ct)
    {
        if (_shared is null)
        {
            (_sharedClient, _shared) = await ConnectAsync(ct);
            await _shared.WriteAsync(new[] { (byte)'P' }, ct);
        }

        var ping = new byte[] { 1 };
        var pong = new byte[1];
        var watch = Stopwatch.StartNew();
        for (int i = 0; i < count; i++)
        {
            await _shared.WriteAsync(ping, ct);
            await _shared.ReadExactlyAsync(pong, ct);
        }

        return watch.Elapsed;
    }

    /// <summary>Per request: a new TCP connection and (with TLS) a mutual TLS 1.3 handshake, one byte each way, close.</summary>
    public async Task<TimeSpan> ConnectionRequestsAsync(int count, CancellationToken ct)
    {
        var request = new byte[] { (byte)'P', 1 };
        var pong = new byte[1];
        var watch = Stopwatch.StartNew();
        for (int i = 0; i < count; i++)
        {
            var (client, stream) = await ConnectAsync(ct);
            using (client)
            await using (stream)
            {
                await stream.WriteAsync(request, ct);
                await stream.ReadExactlyAsync(pong, ct);
            }
        }

        return watch.Elapsed;
    }

    private async Task<(TcpClient, Stream)> ConnectAsync(CancellationToken ct)
    {
        var client = new TcpClient { NoDelay = true };
        try
        {
            await client.ConnectAsync(EndPoint, ct);
            Stream stream = client.GetStream();
            if (_tls)
            {
                var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
                await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
                {
                    TargetHost = "localhost",
                    EnabledSslProtocols = SslProtocols.Tls13,
                    ClientCertificates = [_pki.Client],
                    RemoteCertificateValidationCallback = _pki.Callback,
                }, ct);
                stream = ssl;
            }

            return (client, stream);
        }
        catch
        {
            client.Dispose();
            throw;
        }
    }

    private async Task AcceptLoopAsync()
    {
        try
        {
            while (true)
            {
                var client = await _listener.AcceptTcpClientAsync(_cts.Token);
                client.NoDelay = true;
                _ = Task.Run(() => ServeAsync(client));
            }
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
            // Shut down.
        }
    }

    private async Task ServeAsync(TcpClient client)
    {
        using (client)
        {
            try
            {
                Stream stream = client.GetStream();
                if (_tls)
                {
                    var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
                    await ssl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
                    {
                        ServerCertificateContext = _serverContext,
                        EnabledSslProtocols = SslProtocols.Tls13,
                        ClientCertificateRequired = true,
                        RemoteCertificateValidationCallback = _pki.Callback,
                    }, _cts.Token);
                    stream = ssl;
                }

                await using (stream)
                {
                    var header = new byte[9];
                    await stream.ReadExactlyAsync(header.AsMemory(0, 1), _cts.Token);
                    if (header[0] == 'B')
                    {
                        await stream.ReadExactlyAsync(header.AsMemory(1), _cts.Token);
                        long remaining = BinaryPrimitives.ReadInt64LittleEndian(header.AsSpan(1));
                        var buffer = new byte[256 * 1024];
                        while (remaining > 0)
                        {
                            int n = await stream.ReadAsync(buffer.AsMemory(0, (int)Math.Min(buffer.Length, remaining)), _cts.Token);
                            if (n == 0)
                            {
                                return;
                            }

                            remaining -= n;
                        }

                        await stream.WriteAsync(new byte[] { 2 }, _cts.Token);
                        return;
                    }

                    var ping = new byte[1];
                    while (await stream.ReadAsync(ping, _cts.Token) > 0)
                    {
                        await stream.WriteAsync(ping, _cts.Token);
                    }
                }
            }
            catch (Exception e) when (e is OperationCanceledException or IOException or AuthenticationException or SocketException)
            {
                // The client went away, or the benchmark ended.
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

        _sharedClient?.Dispose();
        _listener.Stop();
        await _acceptLoop.WaitAsync(TimeSpan.FromSeconds(10));
        _cts.Dispose();
    }
}
