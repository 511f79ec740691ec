/** Models registered when neither AVAILABLE_MODELS nor the config file names any. */
export const DEFAULT_MODELS: readonly string[] = [
  // Chat and reasoning
  'gpt-4',
  'gpt-4-turbo',
  'gpt-4o',
  'gpt-4o-mini',
  'gpt-3.5-turbo',
  'chatgpt-4o-latest',
  'gpt-4.1',
  'gpt-4.1-mini',
  'gpt-4.1-nano',
  'gpt-5',
  'gpt-5-mini',
  'gpt-5-nano',
  'o1',
  'o1-mini',
  'o1-pro',
  'o3',
  'o3-mini',
  'o3-pro',
  'o4-mini',
  // Embeddings
  'text-embedding-ada-002',
  'text-embedding-3-small',
  'text-embedding-3-large',
  // Audio
  'whisper-1',
  'gpt-4o-transcribe',
  'gpt-4o-mini-transcribe',
  'tts-1',
  'tts-1-hd',
  'gpt-4o-mini-tts',
  // Images
  'dall-e-2',
  'dall-e-3',
  'gpt-image-1',
  // Moderation
  'omni-moderation-latest',
  'text-moderation-latest',
];
