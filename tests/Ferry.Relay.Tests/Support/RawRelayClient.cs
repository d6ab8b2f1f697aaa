using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;

namespace Ferry.Relay.Tests.Support;

/// <summary>A bare TLS client speaking frames by hand, for misbehaving peers: no ticket, junk frames, never reading.</summary>
internal sealed class RawRelayClient : IAsyncDisposable
{
    private readonly Socket _socket;
    private readonly SslStream _stream;
    private readonly PipeReader _reader;

    private RawRelayClient(Socket socket, SslStream stream)
    {
        _socket = socket;
        _stream = stream;
        _reader = PipeReader.Create(stream, new StreamPipeReaderOptions(leaveOpen: true));
    }

    public static async Task<RawRelayClient> ConnectAsync(IPEndPoint relay, X509Certificate2? certificate, int? receiveBufferSize = null)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        if (receiveBufferSize is { } size)
        {
            // Set before connecting so the advertised window stays small and a non-reading client backs up quickly.
            socket.ReceiveBufferSize = size;
        }

        await socket.ConnectAsync(relay, Bounded.Ct).AsTask().Within();
        var stream = new SslStream(new NetworkStream(socket, ownsSocket: false));
        var options = new SslClientAuthenticationOptions
        {
            TargetHost = "127.0.0.1",
            EnabledSslProtocols = SslProtocols.Tls13,
            ApplicationProtocols = [new SslApplicationProtocol("ferry-relay/1")],
            RemoteCertificateValidationCallback = (_, _, _, _) => true,
        };
        if (certificate is not null)
        {
            options.ClientCertificates = [certificate];
        }

        try
        {
            await stream.AuthenticateAsClientAsync(options, Bounded.Ct).Within();
        }
        catch
        {
            await stream.DisposeAsync();
            socket.Dispose();
            throw;
        }

        return new RawRelayClient(socket, stream);
    }

    public async Task SendAsync(ReadOnlyMemory<byte> bytes)
    {
        await _stream.WriteAsync(bytes, Bounded.Ct).AsTask().Within();
        await _stream.FlushAsync(Bounded.Ct).Within();
    }

    public Task BindAsync(uint requestId, string ticket)
    {
        var frame = new byte[RelayFrameCodec.BindLength(ticket)];
        RelayFrameCodec.WriteBind(frame, requestId, ticket);
        return SendAsync(frame);
    }

    public Task SendDataAsync(ushort channel, ReadOnlySpan<byte> packet)
    {
        var frame = new byte[RelayFrameCodec.DataLength(packet.Length)];
        RelayFrameCodec.WriteData(frame, channel, packet);
        return SendAsync(frame);
    }

    /// <summary>The next frame from the relay, or null when the relay closed the connection (or TLS failed).</summary>
    public async Task<(RelayFrameType Type, byte[] Payload)?> ReadFrameAsync()
    {
        while (true)
        {
            ReadResult result;
            try
            {
                result = await _reader.ReadAsync(Bounded.Ct).AsTask().Within();
            }
            catch (Exception ex) when (ex is IOException or AuthenticationException or ObjectDisposedException)
            {
                return null;
            }

            var buffer = result.Buffer;
            var status = RelayFrameCodec.TryRead(ref buffer, out var frame, out var error);
            if (status == RelayFrameStatus.Frame)
            {
                var payload = frame.Payload.ToArray();
                var type = frame.Type;
                _reader.AdvanceTo(buffer.Start);
                return (type, payload);
            }

            if (status == RelayFrameStatus.Invalid)
            {
                throw new InvalidDataException($"relay sent an invalid frame: {error}");
            }

            _reader.AdvanceTo(buffer.Start, buffer.End);
            if (result.IsCompleted)
            {
                return null;
            }
        }
    }

    /// <summary>Reads frames until one of <paramref name="type"/> arrives; null if the relay closes first.</summary>
    public async Task<byte[]?> ReadUntilAsync(RelayFrameType type)
    {
        for (var i = 0; i < 10_000; i++)
        {
            var frame = await ReadFrameAsync();
            if (frame is null)
            {
                return null;
            }

            if (frame.Value.Type == type)
            {
                return frame.Value.Payload;
            }
        }

        throw new InvalidOperationException($"no {type} frame within 10000 frames");
    }

    public async ValueTask DisposeAsync()
    {
        await _reader.CompleteAsync();
        await _stream.DisposeAsync();
        _socket.Dispose();
    }
}
