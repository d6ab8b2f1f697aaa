using System.Runtime.InteropServices;
using Ferry.Quic.Interop;

namespace Ferry.Quic.Internal;

/// <summary>
/// Outgoing bytes of one stream in native memory: ngtcp2 keeps pointers to stream data until it is
/// acknowledged (it does not copy), so the bytes must neither move nor be freed before the ack.
/// Guarded by the connection lock.
/// </summary>
internal sealed unsafe class SendBuffer : IDisposable
{
    private const int ChunkSize = 64 * 1024;
    private readonly List<nint> _chunks = [];
    private long _baseOffset;   // stream offset of _chunks[0][0]
    private long _ackedOffset;
    private long _sentOffset;
    private long _endOffset;

    public long Buffered => _endOffset - _ackedOffset;

    public long Unsent => _endOffset - _sentOffset;

    public void Append(ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            long capacityEnd = _baseOffset + ((long)_chunks.Count * ChunkSize);
            if (_endOffset == capacityEnd)
            {
                _chunks.Add((nint)NativeMemory.Alloc(ChunkSize));
                capacityEnd += ChunkSize;
            }

            int inChunk = (int)((_endOffset - _baseOffset) % ChunkSize);
            int n = (int)Math.Min(data.Length, capacityEnd - _endOffset);
            data[..n].CopyTo(new Span<byte>((byte*)_chunks[^1] + inChunk, n));
            _endOffset += n;
            data = data[n..];
        }
    }

    /// <summary>Describes up to vecs.Length contiguous pieces of unsent data.</summary>
    public int GetUnsent(Span<ngtcp2_vec> vecs, out long total)
    {
        int count = 0;
        total = 0;
        long offset = _sentOffset;
        while (count < vecs.Length && offset < _endOffset)
        {
            int chunkIndex = (int)((offset - _baseOffset) / ChunkSize);
            int inChunk = (int)((offset - _baseOffset) % ChunkSize);
            int n = (int)Math.Min(ChunkSize - inChunk, _endOffset - offset);
            vecs[count++] = new ngtcp2_vec { @base = (byte*)_chunks[chunkIndex] + inChunk, len = (nuint)n };
            offset += n;
            total += n;
        }

        return count;
    }

    public void MarkSent(long n) => _sentOffset += n;

    /// <summary>ngtcp2 reports acknowledged data in increasing, contiguous order; whole chunks below it are freed.</summary>
    public void Acknowledge(long upTo)
    {
        _ackedOffset = Math.Max(_ackedOffset, Math.Min(upTo, _endOffset));
        while (_chunks.Count > 0 && _baseOffset + ChunkSize <= _ackedOffset)
        {
            NativeMemory.Free((void*)_chunks[0]);
            _chunks.RemoveAt(0);
            _baseOffset += ChunkSize;
        }
    }

    /// <summary>Forgets unsent data after a reset; memory stays until Dispose because ngtcp2 may still point at sent bytes.</summary>
    public void DropUnsent() => _endOffset = _sentOffset;

    public void Dispose()
    {
        foreach (var chunk in _chunks)
        {
            NativeMemory.Free((void*)chunk);
        }

        _chunks.Clear();
    }
}
