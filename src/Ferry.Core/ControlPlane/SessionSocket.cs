using System.Buffers;
using System.Net.WebSockets;
using System.Text;

namespace Ferry.Core.ControlPlane;

/// <summary>Carries <see cref="SessionMessage"/>s over a WebSocket: one JSON object per text message, sends serialised, size bounded.</summary>
public sealed class SessionSocket(WebSocket socket) : IAsyncDisposable
{
    /// <summary>Nothing legitimate on the session comes near this; larger messages end the session rather than the process.</summary>
    public const int MaxMessageBytes = 1 << 20;

    private readonly SemaphoreSlim _sendLock = new(1, 1);

    public WebSocketState State => socket.State;

    public async Task SendAsync(SessionMessage message, CancellationToken ct)
    {
        var bytes = Encoding.UTF8.GetBytes(SessionMessage.Serialize(message));
        await _sendLock.WaitAsync(ct);
        try
        {
            await socket.SendAsync(bytes, WebSocketMessageType.Text, endOfMessage: true, ct);
        }
        finally
        {
            _sendLock.Release();
        }
    }

    /// <summary>The next message, or null when the peer closed the session. Messages of unknown type are skipped.</summary>
    public async Task<SessionMessage?> ReceiveAsync(CancellationToken ct)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(16 * 1024);
        try
        {
            while (true)
            {
                var length = 0;
                ValueWebSocketReceiveResult result;
                do
                {
                    if (length == buffer.Length)
                    {
                        if (buffer.Length >= MaxMessageBytes)
                        {
                            throw new InvalidDataException($"session message larger than {MaxMessageBytes} bytes");
                        }
                        var bigger = ArrayPool<byte>.Shared.Rent(buffer.Length * 2);
                        buffer.AsSpan(0, length).CopyTo(bigger);
                        ArrayPool<byte>.Shared.Return(buffer);
                        buffer = bigger;
                    }
                    result = await socket.ReceiveAsync(buffer.AsMemory(length), ct);
                    if (result.MessageType == WebSocketMessageType.Close)
                    {
                        return null;
                    }
                    length += result.Count;
                }
                while (!result.EndOfMessage);
                var message = SessionMessage.Deserialize(buffer.AsSpan(0, length));
                if (message is not null)
                {
                    return message;
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Closes politely with a reason (WebSocket limits it to 123 bytes; the full text goes in a <see cref="RefusedMessage"/> first).</summary>
    public async Task CloseAsync(WebSocketCloseStatus status, string reason, CancellationToken ct)
    {
        if (socket.State is not (WebSocketState.Open or WebSocketState.CloseReceived))
        {
            return;
        }
        var shortReason = reason.Length > 120 ? reason[..120] : reason;
        while (Encoding.UTF8.GetByteCount(shortReason) > 123)
        {
            shortReason = shortReason[..^1];
        }
        try
        {
            await socket.CloseOutputAsync(status, shortReason, ct);
        }
        catch (Exception e) when (e is WebSocketException or OperationCanceledException or IOException)
        {
            // The peer is gone already; nothing more to say to it.
        }
    }

    public ValueTask DisposeAsync()
    {
        socket.Dispose();
        _sendLock.Dispose();
        return ValueTask.CompletedTask;
    }
}
