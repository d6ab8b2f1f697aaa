using System.Buffers;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using Ferry.Core.Flows;
using Microsoft.Extensions.Logging;

namespace Ferry.Client.Access;

/// <summary>
/// An HTTP/1.1 proxy on loopback that only tunnels: "CONNECT host:port" becomes a Ferry flow; other methods get 405 with the reason.
/// Refusals answer 403, 502 or 504 (see <see cref="FlowReply.ToHttpStatusCode"/>) with the connector's reason as a text/plain body.
/// </summary>
public sealed class HttpConnectProxy : LoopbackProxy
{
    /// <summary>Largest request head accepted; CONNECT requests are a few hundred bytes.</summary>
    public const int MaxHeadLength = 8 * 1024;

    private static readonly byte[] HeadEnd = "\r\n\r\n"u8.ToArray();

    public HttpConnectProxy(ClientRoutes routes, IFlowOpener opener, LoopbackProxyOptions? options = null, ILogger? logger = null)
        : base("http-connect", routes, opener, options, logger)
    {
    }

    protected override async Task HandleConnectionAsync(Socket socket, NetworkStream stream, CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(MaxHeadLength);
        try
        {
            int headLength;
            int filled;
            using (var handshake = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken))
            {
                handshake.CancelAfter(Options.HandshakeTimeout);
                try
                {
                    (headLength, filled) = await ReadHeadAsync(stream, buffer, handshake.Token);
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                {
                    await RespondAsync(stream, 408, "Request Timeout", $"no complete request head arrived within {Options.HandshakeTimeout.TotalSeconds:0.#} s", cancellationToken);
                    return;
                }
            }
            if (headLength == 0)
            {
                return;
            }
            if (headLength < 0)
            {
                await RespondAsync(stream, 431, "Request Header Fields Too Large", $"the request head is longer than {MaxHeadLength} bytes; a CONNECT request needs only its request line", cancellationToken);
                return;
            }

            var head = Encoding.Latin1.GetString(buffer, 0, headLength);
            var lineEnd = head.IndexOf("\r\n", StringComparison.Ordinal);
            var parts = head[..lineEnd].Split(' ');
            if (parts.Length != 3 || !parts[2].StartsWith("HTTP/1.", StringComparison.Ordinal))
            {
                await RespondAsync(stream, 400, "Bad Request", "the request line is not 'METHOD target HTTP/1.1'", cancellationToken);
                return;
            }
            var (method, target) = (parts[0], parts[1]);
            if (method != "CONNECT")
            {
                Log.HandshakeRefused(Logger, Kind, $"method {method} is not CONNECT");
                await RespondAsync(
                    stream, 405, "Method Not Allowed",
                    $"Ferry's HTTP proxy only tunnels with CONNECT host:port; {Printable(method)} is not supported. Use it as an HTTPS proxy, or use the SOCKS5 proxy.",
                    cancellationToken, "Allow: CONNECT\r\n");
                return;
            }
            if (!TryParseAuthority(target, out var host, out var port, out var error))
            {
                Log.HandshakeRefused(Logger, Kind, error);
                await RespondAsync(stream, 400, "Bad Request", error, cancellationToken);
                return;
            }

            var destination = FlowHeader.FormatHostPort(host, port);
            var flow = await OpenFlowAsync(host, port, early: null, cancellationToken);
            if (!flow.Reply.IsOk)
            {
                var status = FlowReply.ToHttpStatusCode(flow.Reply.Status);
                await RespondAsync(stream, status, FlowReply.ToHttpReasonPhrase(flow.Reply.Status), $"{flow.Reply.Status}: {flow.Reply.Message}", cancellationToken);
                return;
            }
            // Bytes after the head (a client that sends its TLS hello without waiting) belong to the tunnel.
            var early = buffer.AsMemory(headLength, filled - headLength).ToArray();
            try
            {
                await stream.WriteAsync("HTTP/1.1 200 Connection Established\r\n\r\n"u8.ToArray(), cancellationToken);
            }
            catch
            {
                await flow.DisposeAsync();
                throw;
            }
            await CopyAsync(stream, FlowCopier.ShutdownSocketSend, flow, early, sentBefore: 0, destination, cancellationToken);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    // Head length (including the blank line) and bytes read; 0 when the connection ended first, -1 when the head does not fit.
    private static async Task<(int HeadLength, int Filled)> ReadHeadAsync(NetworkStream stream, byte[] buffer, CancellationToken cancellationToken)
    {
        var filled = 0;
        while (filled < MaxHeadLength)
        {
            var read = await stream.ReadAsync(buffer.AsMemory(filled, MaxHeadLength - filled), cancellationToken);
            if (read == 0)
            {
                return (0, filled);
            }
            // Search from just before the new bytes, in case the terminator straddles two reads.
            var from = Math.Max(0, filled - (HeadEnd.Length - 1));
            filled += read;
            var at = buffer.AsSpan(from, filled - from).IndexOf(HeadEnd);
            if (at >= 0)
            {
                return (from + at + HeadEnd.Length, filled);
            }
        }
        return (-1, filled);
    }

    /// <summary>Parses "host:port" or "[v6]:port" as a CONNECT target.</summary>
    internal static bool TryParseAuthority(string target, out string host, out int port, out string error)
    {
        host = "";
        port = 0;
        string portText;
        if (target.StartsWith('['))
        {
            var close = target.IndexOf(']', StringComparison.Ordinal);
            if (close < 0 || close + 1 >= target.Length || target[close + 1] != ':')
            {
                error = $"CONNECT target '{Printable(target)}' is not '[ipv6]:port'";
                return false;
            }
            host = target[1..close];
            portText = target[(close + 2)..];
        }
        else
        {
            var colon = target.LastIndexOf(':');
            if (colon <= 0 || target.IndexOf(':', StringComparison.Ordinal) != colon)
            {
                error = $"CONNECT target '{Printable(target)}' is not 'host:port' (write IPv6 addresses in brackets)";
                return false;
            }
            host = target[..colon];
            portText = target[(colon + 1)..];
        }
        if (!int.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out port) || port is < 1 or > 65535)
        {
            error = $"CONNECT target '{Printable(target)}' has no valid port: use 1-65535";
            return false;
        }
        return FlowHeader.TryValidate(FlowProtocol.Tcp, host, port, out error);
    }

    private static string Printable(string text)
    {
        var shortened = text.Length <= 64 ? text : text[..64] + "…";
        return string.Concat(shortened.Select(c => c is < ' ' or > '~' and not '…' ? '?' : c));
    }

    private static async Task RespondAsync(NetworkStream stream, int status, string reason, string body, CancellationToken cancellationToken, string extraHeaders = "")
    {
        var bodyBytes = Encoding.UTF8.GetBytes(body + "\n");
        var head = string.Create(
            CultureInfo.InvariantCulture,
            $"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {bodyBytes.Length}\r\nConnection: close\r\n{extraHeaders}\r\n");
        await stream.WriteAsync(Encoding.ASCII.GetBytes(head), cancellationToken);
        await stream.WriteAsync(bodyBytes, cancellationToken);
    }
}
